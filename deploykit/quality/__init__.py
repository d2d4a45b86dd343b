"""Checking what a deployed model answers: data sets, the programs that check code completions, and the
figures made from their outcomes. Pure: values in, values out; it runs nothing."""
