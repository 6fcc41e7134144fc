"""The embedding service: task models embed inputs on Ray actors fed by Ray Data."""
