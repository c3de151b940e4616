"""A run of edits: its records (the one typed schema) and the recorder that journals them and
writes the reports."""
