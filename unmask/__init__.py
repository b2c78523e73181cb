"""UnMask: adversarial detection and defense through building-block (part) alignment.

Data flows one way: configuration -> data -> models -> attacks -> UnMask rules -> metrics ->
report; no module imports from a stage after its own.
"""

__version__ = "0.1.0"
