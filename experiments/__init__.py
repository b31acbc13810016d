"""klax experiments: small composable scripts, each with a pure `run(config)` and a CLI."""
