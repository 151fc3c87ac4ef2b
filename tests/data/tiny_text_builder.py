"""A two-split tfds text dataset built from strings, to test the tfds path without a download.

It has train and test splits only (like lm1b), so "validation" must fall back to "test".
tfds builders must live in an importable module; defining the class registers its name.
"""

import tensorflow_datasets as tfds

TRAIN_TEXTS = ("Première ligne — train", "second train document", "", "third: ünïcødé ✓")
TEST_TEXTS = ("held-out test document", "another test document")


class LloglinTinyText(tfds.core.GeneratorBasedBuilder):
  """Registered as "lloglin_tiny_text"."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(TRAIN_TEXTS),
            "test": self._generate_examples(TEST_TEXTS)}

  def _generate_examples(self, texts):
    for i, text in enumerate(texts):
      yield i, {"text": text}
