"""Who is calling: request signing schemes (sans-IO), access keys, policies, replay."""
