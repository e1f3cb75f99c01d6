"""Errors raised for bad user input: one type, clear messages, caught by the CLI."""


class SilkError(ValueError):
    """A problem with an input the user gave (image, checkpoint, config, path), explained in words."""
