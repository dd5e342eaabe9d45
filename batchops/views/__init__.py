"""How results of the library read to people: plan text and Markdown, and the CLI's tables."""
