"""Reading results: reports, claims, recommendations, statistics, export."""
