"""Standalone perturbation modules: differentiable, device-resident building blocks of perturbation methods."""
