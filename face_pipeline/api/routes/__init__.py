"""One router per resource: faces (and their clusters), persons, health."""
