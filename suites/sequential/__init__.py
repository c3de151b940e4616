"""Sequential editing over the hard list and over normal cases."""
