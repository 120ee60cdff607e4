from conspo.cli import entry_point

entry_point()
