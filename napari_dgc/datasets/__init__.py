"""Generated datasets: the synthetic close-range leaf scene with ground truth."""
