"""Making the plan so: the evaluator (`evaluator`), the apply loop (`run`), and polling (`refresh`)."""
