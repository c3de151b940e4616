"""Normal CounterFact cases, the control group."""
