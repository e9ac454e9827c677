"""The tiny Hugging Face fixtures (scripts/make_hf_fixtures.py) and their logit bound."""
import os

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                        "hf")
LOGIT_ATOL = 1e-4  # the bound; float32 both sides, different summation orders
