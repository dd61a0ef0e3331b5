"""SQL text, read with PostgreSQL's own parser: `parse.py` is the one place pgmux drives pglast, and
`TextCache` the one bounded cache by text that its consumers (routing/classify.py,
session/statements.py) keep what they derive from a parse in."""
