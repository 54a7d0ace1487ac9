"""Backpropagation: the end-to-end reference. One optimizer over everything, stepped after the head."""
from layerwise.methods.base import LearningRule


class Backprop(LearningRule):
    name = "bp"
    local = False
