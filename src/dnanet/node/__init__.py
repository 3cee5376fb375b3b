"""The AI node: answers challenges, serves AI work, claims rewards."""
