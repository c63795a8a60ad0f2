"""The simulated Hugging Face Hub and Colab runtime behind tests/test_real_path.py (see builder.py, colab.py)."""
