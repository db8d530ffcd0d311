"""The `ilsim` command line."""
