"""Tasks and their evaluation stages. Stage code runs inside the sandbox child."""
