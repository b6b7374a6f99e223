"""Model growth in one place: the plan (``plan``), the model swap (``swap``), checkpoints of a
grown run (``reshape``); ``sprout.callbacks.growth.Growth`` only says when."""
