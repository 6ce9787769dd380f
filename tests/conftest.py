"""Shared pytest set-up."""
import torch

# The suite runs small CPU models on a couple of shared cores: one intra-op thread avoids OpenMP oversubscription,
# which otherwise makes each forward pass many times slower when other processes compete for the cores.
torch.set_num_threads(1)
