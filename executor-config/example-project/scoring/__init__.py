"""Example batch job: scores yesterday's data (a stand-in for the team's real job)."""


def score(values):
    """Mean of the values, 0.0 for none."""
    values = list(values)
    return sum(values) / len(values) if values else 0.0
