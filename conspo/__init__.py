"""conspo: ConSPO and GRPO-family objectives for RL with verifiable rewards."""

__version__ = "0.3.0"
