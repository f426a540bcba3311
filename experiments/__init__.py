"""Paper experiments and claim verdicts: outside the installed package (the library never imports this)."""
