"""The `videosearch` command line (typer): corpus, models, index, train, eval, bench.
Each subcommand takes a preset (`--config`) and `key=value` overrides."""
