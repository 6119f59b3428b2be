"""Server-side aggregation of client updates: the pure maths and the strategies built on it."""
