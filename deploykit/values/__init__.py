"""Values: plain data and the constants everything else shares; imports nothing of deploykit but values."""
