"""Service acts: service records gathered per organisation, insurer and period into the OMS register layout."""
