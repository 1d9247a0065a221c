"""relaxbench: does relaxing the equivariance constraint during training give better equivariant models?

Reproduces Pertigkiozoglou et al., "Improving Equivariant Model Training via Constraint Relaxation"
(NeurIPS 2024) across architecture families, seeds and data sizes.
"""

__version__ = "0.1.0"
