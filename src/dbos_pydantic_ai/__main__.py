"""`python -m dbos_pydantic_ai`: the `dbos-pydantic-ai` command line."""

from .cli import main

main()
