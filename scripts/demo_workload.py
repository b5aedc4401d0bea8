"""The demo's experiment: a fixed number of matrix products in one precision.

float64 products do the same number of operations as float32 ones with twice the memory traffic and about
half the throughput, so the float64 set takes longer and uses more energy: the comparison has an effect to find.
"""

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", choices=["float32", "float64"], required=True)
    parser.add_argument("--products", type=int, default=500, help="how many 1024x1024 matrix products")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    a = rng.random((1024, 1024)).astype(args.dtype)
    started = time.perf_counter()
    for _ in range(args.products):
        a = (a @ a) / 1024.0
    seconds = time.perf_counter() - started
    gflops = 2 * 1024**3 * args.products / seconds / 1e9
    print(f"{args.products} {args.dtype} products in {seconds:.2f} s ({gflops:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
