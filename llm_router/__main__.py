"""`python -m llm_router …`: the `llm-router` command, for an environment without its console script on PATH."""

from llm_router.cli import main

if __name__ == "__main__":
    main()
