"""conspo: ConSPO and GRPO-family objectives for RL with verifiable rewards."""

__version__ = "0.2.0"
