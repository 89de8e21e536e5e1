"""Federal registries (ФРМР, ФРМО): verification answers and their verdicts."""
