"""placeholder until written."""
COMMANDS: list = []
