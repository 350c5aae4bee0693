import argparse

from scoring import score

parser = argparse.ArgumentParser(prog="scoring")
parser.add_argument("--date", default="yesterday")
parser.add_argument("--backfill", type=int, default=0)
args = parser.parse_args()
print(f"scoring {args.date} (backfill {args.backfill} days): {score([1, 2, 3])}")
