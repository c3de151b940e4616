"""editguard's errors (placeholder until the full hierarchy lands)."""


class EditguardError(Exception):
    exit_code = 2


class UsageError(EditguardError):
    pass


class ReportError(EditguardError):
    pass
