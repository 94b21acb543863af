"""Products of trained response models: MEIs (and MENIs, inhibitory images), VEIs, invariance manifolds, reconstructions, similarity diagnostics.

Each product is a small object of typed settings (`method: GASettings | EGGSettings` where it
synthesises images); `make_products` makes a list of them for one model into a folder through
the store (fingerprints, get-or-make, copies, atomic files). Callbacks, the CLI, `compare` and
the benchmarks all go through here.
"""

from encoders.products.base import Made, Product, ProductData, make_products
from encoders.products.manifolds import InvarianceManifolds
from encoders.products.meis import MEIs, compute_meis
from encoders.products.progress import Progress
from encoders.products.reconstructions import Reconstructions, compute_reconstructions
from encoders.products.similarity import SimilarityDiagnostics
from encoders.products.veis import VEIs

__all__ = [
    "InvarianceManifolds", "MEIs", "Made", "Product", "ProductData", "Progress", "Reconstructions", "SimilarityDiagnostics", "VEIs",
    "compute_meis", "compute_reconstructions", "make_products",
]
