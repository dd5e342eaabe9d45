"""What the user declared: spec files (`model`), the items they render to (`items`, `parallel`),
and the desired state the planner diffs against (`desired`). Reads files only; never the state or
the network."""
