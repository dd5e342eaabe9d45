"""One function per command, under the CLI: `context` (validate, plan, apply, import, locks),
`status`, `results` and `surgery` (state list/show/rm)."""
