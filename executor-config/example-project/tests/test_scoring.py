import unittest

from scoring import score


class ScoreTest(unittest.TestCase):
    def test_mean(self):
        self.assertEqual(score([1, 2, 3]), 2.0)

    def test_empty(self):
        self.assertEqual(score([]), 0.0)


if __name__ == "__main__":
    unittest.main()
