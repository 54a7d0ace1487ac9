"""Backpropagation: the end-to-end reference. One optimizer over everything, stepped after the head."""
from layerwise.rules.base import LearningRule


class Backprop(LearningRule):
    name = "bp"
    local = False
