"""The IOI circuit (Wang et al. 2022): dataset, analyses, head classification, evaluation."""
