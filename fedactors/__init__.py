"""fedactors: federated learning on Ray, starting from FedAvg on MNIST (McMahan et al. 2017)."""

__version__ = "0.1.0"
