"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (grid file, option, results path): one clear line."""


class NotAvailableError(UserError):
    """A part that exists in the schema but cannot run here (e.g. data not present)."""
