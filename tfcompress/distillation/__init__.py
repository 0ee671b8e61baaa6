"""Knowledge distillation: train a small student to imitate a frozen teacher (`Distiller`).

    >>> distiller = tfc.Distiller(teacher=teacher, student=student)
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"])
    >>> distiller.fit(distiller.cache_teacher(x, y), epochs=3)
"""

from tfcompress.distillation.distiller import LABELS_KEY, TEACHER_LOGITS_KEY, Distiller, SoftEnsemble, ensemble_teacher

__all__ = ["Distiller", "SoftEnsemble", "ensemble_teacher", "LABELS_KEY", "TEACHER_LOGITS_KEY"]
