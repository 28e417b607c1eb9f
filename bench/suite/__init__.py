"""The suite: accuracy and FLOPs of trained cells (``accuracy``, ``fewshot``, ``recipes``, ``data``), the parts a
cell is measured with (``cells``, ``probe``, ``int8_column``) and the page's accuracy sections (``aggregate``,
``targets``, ``page``). It imports the lab, never the serving wing."""
