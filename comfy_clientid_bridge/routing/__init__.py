"""Routing: which tab a programmatic /prompt, a broadcast or a queue put belongs to."""
